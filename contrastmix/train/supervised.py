"""Lightning modules for supervised recipes (registered with contrastmix.train.pretrain.register_module)."""

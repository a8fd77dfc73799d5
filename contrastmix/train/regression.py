"""Lightning modules for regression recipes (registered with contrastmix.train.pretrain.register_module)."""

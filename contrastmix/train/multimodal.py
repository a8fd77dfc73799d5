"""Lightning modules for multimodal recipes (registered with contrastmix.train.pretrain.register_module)."""

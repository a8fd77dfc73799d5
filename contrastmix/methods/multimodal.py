"""Recipe schemas for multimodal methods (registered with contrastmix.config.register_method)."""

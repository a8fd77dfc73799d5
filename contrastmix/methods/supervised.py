"""Recipe schemas for supervised methods (registered with contrastmix.config.register_method)."""

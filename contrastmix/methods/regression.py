"""Recipe schemas for regression methods (registered with contrastmix.config.register_method)."""

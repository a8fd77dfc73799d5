"""Dataset builders for regression data, registered with contrastmix.data.registry.register_dataset."""

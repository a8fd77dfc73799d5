"""Dataset builders for multimodal data, registered with contrastmix.data.registry.register_dataset."""

"""dataset_prep: raw product data -> RecBole atomic files -> item features -> RQ-VAE codes."""

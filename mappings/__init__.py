"""The shipped mapping files, installed as the data package ``gateway_mappings``
(see gateway.mapping.builtin_mappings_dir)."""

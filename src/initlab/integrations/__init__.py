"""Optional integrations: `initlab.integrations.lightning` (extra `initlab[lightning]`) and
`initlab.integrations.hf` (extra `initlab[hf]`). Import them by module; nothing here pulls them."""

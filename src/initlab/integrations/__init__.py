"""Optional integrations: `initlab.integrations.lightning` (extra `initlab[lightning]`: a Lightning
`Trainer` callback) and `initlab.integrations.hf` (extra `initlab[hf]`: batch helpers and a
`transformers.Trainer` callback). Import them by module; nothing here pulls them. `common.py`
holds what both callbacks share."""

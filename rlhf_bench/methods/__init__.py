"""One file per method; each exposes a config dataclass and ``train(ctx, cfg)``."""

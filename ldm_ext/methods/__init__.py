"""One LightningModule per method on top of ``base.IdentityMethod``."""

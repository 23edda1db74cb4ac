"""Backend implementations other than plain torch hooks (see `steer.sites.backend`)."""

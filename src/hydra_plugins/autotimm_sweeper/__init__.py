"""autotimm's Hydra plugins (Hydra loads sweepers only from its ``hydra_plugins`` namespace)."""

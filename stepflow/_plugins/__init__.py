"""The built-in plugins: loaded by name by the plugin manager, registered through the same hooks a
third-party plugin uses (as pytest's ``default_plugins``)."""

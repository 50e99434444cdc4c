"""HTTP surfaces, one package each; the factory registers those listed in BLUEPRINTS."""

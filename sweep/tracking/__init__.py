"""MLflow: ordered delivery through outages, the Tune callback, what a sweep's runs record."""

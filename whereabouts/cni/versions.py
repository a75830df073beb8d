"""CNI versions this plugin speaks. No imports: the VERSION probe loads only this."""

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

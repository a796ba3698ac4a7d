"""Suite-wide settings: keep every service on loopback and the CPU test runs small."""

import os

# Ray binds the machine's external interface unless told otherwise; tests must stay on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Never let a test reach a real AWS endpoint or pick up a developer's credentials.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

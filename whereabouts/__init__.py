"""whereabouts: a cluster-wide IPAM CNI plugin.

The package is layered (see docs/architecture.md): pure values and range math at
the bottom, one Store protocol with an adapter per datastore, entry points on top.
Nothing here may import more than the standard library at import time, because the
CNI plugin is executed once per pod attachment from a zipapp.
"""

__version__ = "0.1.0"

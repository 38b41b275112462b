"""The ``function`` package IoT Studio functions import: ``function.secrets`` and
``function.variables``, backed by the bridge's secrets directory."""

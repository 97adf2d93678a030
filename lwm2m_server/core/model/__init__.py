"""Object definitions (what an LwM2M object and its resources are) and the model that holds them.

``ObjectModel.default()`` holds our built-in definitions of objects 0, 1, 3, 4 and 5; :func:`.ddf.parse_ddf` reads
OMA DDF XML (and :mod:`lwm2m_server.object_files` reads it from disk) so users can add any object of the registry.
"""

from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition

__all__ = ["ObjectDefinition", "ObjectModel", "ResourceDefinition"]

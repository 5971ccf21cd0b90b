"""Data access: the pynamodb models, their keys, and the operations on them."""

from ximilar_async.dal.models import ImageItem, RequestItem, Tables, bind_tables

__all__ = ["ImageItem", "RequestItem", "Tables", "bind_tables"]

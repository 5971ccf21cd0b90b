"""The domain's services and the ports (`ports`) they are given: what the functions do."""

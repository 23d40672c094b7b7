"""The service's HTTP routes, one blueprint per concern; create_app registers them."""

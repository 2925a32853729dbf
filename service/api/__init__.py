"""HTTP routers of the gateway, one per resource; ``service.app.create_app`` assembles them."""

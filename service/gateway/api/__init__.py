"""HTTP routers of the gateway, one per resource; ``service.gateway.app.create_app`` assembles them."""

"""The HTTP face of lequan: request signing, the FastAPI app, routes and error mapping."""

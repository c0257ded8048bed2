from services.routing.main import serve

serve()

from services.delivery.main import serve

serve()

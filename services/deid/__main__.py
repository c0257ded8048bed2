from services.deid.main import serve

serve()

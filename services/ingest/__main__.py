from services.ingest.main import serve

serve()

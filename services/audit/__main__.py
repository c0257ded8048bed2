"""`python -m services.audit`: see services.audit.main."""

from services.audit.main import main

main()

import sys

from .remote import main

sys.exit(main())

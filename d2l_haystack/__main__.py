import sys

from d2l_haystack.cli import main

sys.exit(main())

from d2l_haystack.cli import main
import sys
sys.exit(main())

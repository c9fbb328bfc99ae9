import sys

from bench.multidb import scenario_multidb
from bench.run import main

sys.exit(main(more={"multidb": scenario_multidb}))

import sys

from bench.manydb import scenario_manydb
from bench.multidb import scenario_multidb
from bench.run import main

sys.exit(main(more={"multidb": scenario_multidb, "manydb": scenario_manydb}))

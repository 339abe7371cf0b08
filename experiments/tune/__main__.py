from experiments.errors import one_line_errors
from experiments.tune.cli import main

with one_line_errors():
    main()

from experiments.tune.cli import main

main()

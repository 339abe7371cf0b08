from experiments.compare.cli import main

main()

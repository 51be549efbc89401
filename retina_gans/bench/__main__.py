from retina_gans.bench.cli import main

main()

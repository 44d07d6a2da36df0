from intake_cli.cli import main

main()

from intake_cli.faces.cli import main

main()

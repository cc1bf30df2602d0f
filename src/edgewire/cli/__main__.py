from edgewire.cli.main import main

main()

from vitcam_cli.cli import main

main()

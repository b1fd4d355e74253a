from camstream.cli import main

main()

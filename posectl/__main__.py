from posectl.cli import main

main()

from ftapi.main import main

main()

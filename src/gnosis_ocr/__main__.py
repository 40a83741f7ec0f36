from gnosis_ocr.cli.main import main

main()

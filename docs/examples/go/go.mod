module sigil.example/certdir

go 1.21

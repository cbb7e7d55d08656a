module sigil/interop/peer

go 1.21

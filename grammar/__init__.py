"""The .spad grammar (spad.lark), installed as package data of spadc."""
